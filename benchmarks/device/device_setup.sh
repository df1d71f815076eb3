# device_setup.sh: installs the carried wheels (.whl/: bitsandbytes, trl, datasets, hydra, liger-kernel, deps) on the GPU machine.
# Usage: begin a device command with `source benchmarks/device/device_setup.sh` from the repo root, with `.whl` in carry.
# Meant to be sourced (exports persist); on failure it returns non-zero and never exits the calling shell.

_hds_main() {
    if [ ! -d .whl ] || ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "device_setup: no .whl/*.whl here (run from repo root, carry .whl)" >&2
        return 1
    fi
    # .whl-unsloth/ (carried, optional): engine=unsloth's extra. Its trl 1.15 and datasets 4.8
    # replace .whl's, so every configuration of that call runs on the same trl and datasets.
    local wheels=() w name
    for w in .whl/*.whl; do
        name=$(basename "$w" | cut -d- -f1)
        ls .whl-unsloth/"$name"-*.whl >/dev/null 2>&1 || wheels+=("$w")
    done
    ls .whl-unsloth/*.whl >/dev/null 2>&1 && wheels+=(.whl-unsloth/*.whl) \
        && export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" || { echo "device_setup: pip install failed" >&2; return 1; }
    export PYTHONPATH=/tmp/site HARNESS_CACHE=/tmp/hcache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    # .devcache/ (carried): the embedded tokenizer files, which random-weight shapes borrow
    if [ -d .devcache/models ]; then mkdir -p /tmp/hcache && cp -r .devcache/models /tmp/hcache/; fi
    python3 - <<'PY' || { echo "device_setup: version check failed" >&2; return 1; }
import torch, transformers, peft, bitsandbytes, trl, datasets, hydra, liger_kernel, triton
from importlib.metadata import version
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no-cuda"
print(f"torch={torch.__version__} transformers={transformers.__version__} peft={peft.__version__} "
      f"bitsandbytes={bitsandbytes.__version__} trl={trl.__version__} datasets={datasets.__version__} "
      f"hydra={hydra.__version__} liger_kernel={version('liger-kernel')} triton={triton.__version__} "
      f"device={dev}")
for extra in ("unsloth", "unsloth_zoo"):
    try:
        print(f"{extra}={version(extra)}")
    except Exception:
        pass
PY
}
_hds_main
_hds_rc=$?
unset -f _hds_main
return $_hds_rc 2>/dev/null || exit $_hds_rc
