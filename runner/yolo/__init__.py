"""Ultralytics YOLO jobs: train, val, export, predict, run in-process in a worker thread.

Call `runner.yolo.offline.prepare_ultralytics(settings.state_dir)` before anything imports `ultralytics`;
the executor (`runner.executors.yolo.YoloExecutor`) does so itself.
"""
