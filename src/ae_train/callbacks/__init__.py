"""Lightning callbacks: debug markers, epoch summaries, logged checkpoints."""
