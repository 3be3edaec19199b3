#!/bin/bash
# A stand-in for an LLM fine-tuning script (test code), baked into the test image as /usr/local/bin/train-llm
# (tests/docker_engine.py). It behaves like a Hugging Face Trainer script: prints loss / learning-rate / epoch
# dict lines and a tqdm bar (stderr, carriage returns), writes `checkpoint-N/` folders with a
# `trainer_state.json` every --save_steps, honours --resume_from_checkpoint, and exits on SIGTERM. No ML inside:
# each step sleeps --step_time. Bash and BusyBox only (the image has nothing else).
set -u
output_dir= max_steps=20 save_steps=5 logging_steps=2 step_time=0.05 resume= fail_at=0 stubborn=0
while [ $# -gt 0 ]; do
  case $1 in
    --output_dir) output_dir=$2; shift 2;;
    --max_steps) max_steps=$2; shift 2;;
    --save_steps) save_steps=$2; shift 2;;
    --logging_steps) logging_steps=$2; shift 2;;
    --step_time) step_time=$2; shift 2;;
    --resume_from_checkpoint) resume=$2; shift 2;;
    --fail_at_step) fail_at=$2; shift 2;;
    --stubborn_worker) stubborn=1; shift;;
    *) echo "train-llm: unknown argument $1" >&2; exit 2;;
  esac
done
[ -n "$output_dir" ] || { echo "train-llm: --output_dir is required" >&2; exit 2; }
trap 'echo "received SIGTERM, saving nothing and exiting"; exit 143' TERM

echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
echo "TRAINFORGE_RESUME_FROM=${TRAINFORGE_RESUME_FROM:-}"
echo "resume argument: '$resume'"
echo "working directory: $PWD"
echo "group $$ of $(cut -d' ' -f5 /proc/$$/stat)"

start=0
if [ -n "$resume" ]; then
  state=$(< "$resume/trainer_state.json") || exit 1
  [[ $state =~ \"global_step\":\ *([0-9]+) ]] || { echo "no global_step in $resume" >&2; exit 1; }
  start=${BASH_REMATCH[1]}
  echo "Resuming training from $resume at step $start"
fi

mkdir -p "$output_dir/runs/run0"
head -c 64 /dev/zero >> "$output_dir/runs/run0/events.out.tfevents.1700000000.host.1.0"

if [ "$stubborn" = 1 ]; then
  (trap '' TERM; exec sleep 600) &  # ignores SIGTERM (an ignored signal stays ignored across exec)
fi

for ((step = start + 1; step <= max_steps; step++)); do
  sleep "$step_time"
  pct=$((100 * step / max_steps))
  bar=$(printf '%*s' $((pct / 10)) '' | tr ' ' '#')
  printf '\r%3d%%|%-10s| %d/%d [00:0%d<00:01, 20.00it/s]' "$pct" "$bar" "$step" "$max_steps" $((step % 10)) >&2
  if ((step % logging_steps == 0)); then
    awk -v s="$step" -v t="$max_steps" 'BEGIN { printf "\n{'"'"'loss'"'"': %.4f, '"'"'grad_norm'"'"': 0.5, '"'"'learning_rate'"'"': 2e-05, '"'"'epoch'"'"': %.2f}\n", 2 / s, s / t }'
  fi
  if ((step % save_steps == 0)); then
    tmp=$output_dir/tmp-checkpoint-$step  # written aside, then renamed, as the Trainer does
    mkdir -p "$tmp"
    head -c 1024 /dev/zero > "$tmp/adapter_model.safetensors"
    printf '{"global_step": %d, "max_steps": %d}\n' "$step" "$max_steps" > "$tmp/trainer_state.json"
    mv "$tmp" "$output_dir/checkpoint-$step"
  fi
  if ((step == fail_at)); then
    echo "RuntimeError: CUDA out of memory" >&2
    exit 1
  fi
done
echo >&2
echo "{'train_runtime': 1.0, 'train_loss': 0.8, 'epoch': 1.0}"
