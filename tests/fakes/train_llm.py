#!/usr/bin/env python3
"""A stand-in for an LLM fine-tuning script (test code): logs the way the Hugging Face Trainer and LLaMA-Factory
do (dict lines on stdout, a tqdm bar on stderr), writes `checkpoint-N` folders every `--save_steps`, resumes
from `--resume_from`, and stops on SIGTERM. No ML inside: each step sleeps `--step_time`.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--save_steps", type=int, default=5)
    parser.add_argument("--logging_steps", type=int, default=2)
    parser.add_argument("--step_time", type=float, default=0.05)
    parser.add_argument("--resume_from", default="")
    parser.add_argument("--fail_at_step", type=int, default=0)
    parser.add_argument("--stubborn_worker", action="store_true", help="start a child that ignores SIGTERM")
    args = parser.parse_args()

    def on_sigterm(signum, frame):
        print("received SIGTERM, saving nothing and exiting", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
    print(f"TRAINFORGE_RESUME_FROM={os.environ.get('TRAINFORGE_RESUME_FROM', '')}", flush=True)
    print(f"resume argument: {args.resume_from!r}", flush=True)
    print(f"working directory: {os.getcwd()}", flush=True)

    start = 0
    if args.resume_from:
        with open(os.path.join(args.resume_from, "trainer_state.json")) as f:
            start = json.load(f)["global_step"]
        print(f"Resuming training from {args.resume_from} at step {start}", flush=True)

    runs = os.path.join(args.output_dir, "runs", "run0")
    os.makedirs(runs, exist_ok=True)
    with open(os.path.join(runs, "events.out.tfevents.1700000000.host.1.0"), "ab") as f:
        f.write(b"\x00" * 64)

    if args.stubborn_worker:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        subprocess.Popen([sys.executable, "-c", code])

    total = args.max_steps
    for step in range(start + 1, total + 1):
        time.sleep(args.step_time)
        pct = int(100 * step / total)
        bar = ("█" * (pct // 10)).ljust(10)
        sys.stderr.write(f"\r{pct:3d}%|{bar}| {step}/{total} [00:0{step % 10}<00:01, 20.00it/s]")
        sys.stderr.flush()
        if step % args.logging_steps == 0:
            loss = round(2.0 / step, 4)
            print("\n" + str({"loss": loss, "grad_norm": 0.5, "learning_rate": 2e-05, "epoch": round(step / total, 2)}), flush=True)
        if step % args.save_steps == 0:
            folder = os.path.join(args.output_dir, f"checkpoint-{step}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
                f.write(b"\x01" * 1024)
            with open(os.path.join(folder, "trainer_state.json"), "w") as f:
                json.dump({"global_step": step}, f)
        if step == args.fail_at_step:
            print("RuntimeError: CUDA out of memory", file=sys.stderr, flush=True)
            sys.exit(1)
    sys.stderr.write("\n")
    print(str({"train_runtime": 1.0, "train_loss": 0.8, "epoch": 1.0}), flush=True)


if __name__ == "__main__":
    main()
