"""Drop files from a wheel in place, with their RECORD lines (the kept entries' hashes stay valid).

    python3 benchmarks/device/strip_wheel.py WHEEL DROP [KEEP]

DROP and KEEP are regular expressions matched (re.fullmatch) against each archive path: a path
matching DROP and not KEEP goes. A dropped package's entry_points.txt goes too when it names
a dropped module (a console script that would fail to import).
"""

import os
import re
import sys
import zipfile


def strip(src: str, drop_re: str, keep_re: str | None = None) -> int:
    """Rewrite `src` without the dropped paths; returns how many were dropped."""

    def drop(name: str) -> bool:
        return re.fullmatch(drop_re, name) is not None and (
            keep_re is None or re.fullmatch(keep_re, name) is None
        )

    tmp, dropped = src + ".tmp", 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        names = [i.filename for i in zin.infolist()]
        gone = {n.split("/", 1)[0] for n in names if drop(n)}
        for info in zin.infolist():
            if drop(info.filename):
                dropped += 1
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if not drop(ln.split(",")[0])).encode()
            if info.filename.endswith(".dist-info/entry_points.txt") and any(
                f"= {top}" in data.decode() or f"={top}" in data.decode() for top in gone
            ):
                continue
            zout.writestr(info, data)
    os.replace(tmp, src)
    return dropped


if __name__ == "__main__":
    wheel, drop_re, *keep = sys.argv[1:]
    print(f"{wheel}: {strip(wheel, drop_re, keep[0] if keep else None)} files dropped")
