# Sourced by the bench_*.sh scripts: environment, the shared trial settings, and a watcher that
# keeps a tarball of every record under $OUT (what the lent GPU sends back) while sweeps run.
export PYTHONPATH=/tmp/site HARNESS_CACHE=/tmp/hcache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/rec
# Random-weight shapes, seq 2048 rows (wrapped packing of the embedded data), no lm-eval.
COMMON=('eval.tasks=[]' data.max_seq_len=2048 data.packing=true data.packing_strategy=wrapped
  data.num_train=10000 train.save_adapter=false train.device=cuda
  hydra.callbacks.sweep_summary.report=false)
keep() { tar czf "$OUT/records-$1.tgz" --exclude='*.safetensors' --exclude='trainer' -C /tmp/rec .; }
sweep() {  # sweep NAME OVERRIDES...: one `python -m harness -m` process, wall time recorded
  local name=$1 t0 t1; shift
  if [ -e /tmp/rec/$name ]; then echo "sweep: /tmp/rec/$name exists (records are append-only)" >&2; return 1; fi
  mkdir -p /tmp/rec/$name
  t0=$(date +%s.%N)
  python3 -m harness -m "${COMMON[@]}" "$@" hydra.sweep.dir=/tmp/rec/$name \
    > /tmp/rec/$name.log 2>&1
  t1=$(date +%s.%N)
  grep -v -i warn /tmp/rec/$name.log | grep -E -A12 '^ *[a-z_.]+ +status' | cut -c1-150
  python3 -c "import json; print(json.dumps({'sweep': '$name', 'wall_s': $t1 - $t0, 'start_unix_s': $t0, 'end_unix_s': $t1}))" \
    > /tmp/rec/$name/wall.json
  cp /tmp/rec/$name.log /tmp/rec/$name/sweep.log  # Hydra's job launch times: where the wall went
}
