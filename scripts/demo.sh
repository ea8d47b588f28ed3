#!/usr/bin/env bash
# The main job, end to end: export the real MobileSAM checkpoint to a Triton model
# repository, serve it on the embedded tritonserver, segment a real image by a point and a
# box over gRPC, write an overlay PNG and print its path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
checkpoint=$(python scripts/fetch_test_checkpoint.py)
repo=model_repository
out=${OUT_DIR:-out/demo}
mkdir -p "$out"

# On a CUDA machine the models run PyTorch on the GPU (the torch backends); elsewhere ONNX
# Runtime on the CPU (the python backends).
backends=(--encoder-backend python --decoder-backend python)
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  backends=(--encoder-backend torch --decoder-backend torch --torch-device cuda)
fi
echo "exporting with ${backends[*]}"
samtriton export --model-type vit_t --checkpoint "$checkpoint" --repository "$repo" --name sam "${backends[@]}"

port=${SAMTRITON_GRPC_PORT:-8001}
log="$out/server.log"
samtriton serve --repository "$repo" --grpc-port "$port" --http-port $((port - 1)) --metrics-port $((port + 1)) >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "Triton is serving" "$log" && break
  if ! kill -0 $server 2>/dev/null; then cat "$log"; exit 1; fi
  sleep 0.2
done
grep "Triton is serving" "$log"

# A real photograph: scikit-image's astronaut (512x512).
python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$out/astronaut.png')"
samtriton segment "$out/astronaut.png" --url "127.0.0.1:$port" --model sam \
  --point 260,110 --box 150,20,370,250 --cutout --out "$out"
