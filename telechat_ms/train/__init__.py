"""Training: the native loop behind `telechat-ms train` (trainer.py) with its step cells (step.py), AdamW and
lr schedules (optim.py), AMP and loss scaling (amp.py), data order (batches.py), atomic checkpoints
(checkpoint.py), logs (logs.py) and the loss plot (plot_loss.py). See docs/training.md."""
