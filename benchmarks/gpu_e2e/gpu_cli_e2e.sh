#!/usr/bin/env bash
# GPU end-to-end: virnucpro run on 650M random weights, SIGINT mid-run, resume,
# compare with an uninterrupted run and with fair-esm fp32.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
W=/tmp/e2e; mkdir -p $W
python3 benchmarks/gpu_e2e/make_fasta.py $W/prot.fasta 20000
COMMON="--model esm2_t33_650M_UR50D --random-weights --device cuda --checkpoint-every 3000"
virnucpro --version
echo "== uninterrupted"
/usr/bin/time -f "wall %e s" virnucpro run $W/prot.fasta -o $W/full $COMMON 2>&1 | tail -6
echo "== interrupted"
virnucpro run $W/prot.fasta -o $W/cut $COMMON > $W/cut.log 2>&1 &
PID=$!
for i in $(seq 1 600); do n=$(ls $W/cut/checkpoints/rank_0/*.h5 2>/dev/null | wc -l); [ "$n" -ge 2 ] && break; sleep 0.2; done
kill -INT $PID; wait $PID; echo "exit code after SIGINT: $?"; tail -3 $W/cut.log
virnucpro inspect-checkpoint $W/cut --json | python3 -c "import json,sys; d=json.load(sys.stdin); print({k:d[k] for k in ('state','total_sequences','completed_sequences')})"
echo "== resume"
virnucpro resume $W/cut 2>&1 | tail -6
virnucpro inspect-checkpoint $W/cut --json | python3 -c "import json,sys; d=json.load(sys.stdin); print({k:d[k] for k in ('state','total_sequences','completed_sequences')})"
python3 benchmarks/gpu_e2e/compare_gpu.py $W/full/embeddings.h5 $W/cut/embeddings.h5 $W/prot.fasta
