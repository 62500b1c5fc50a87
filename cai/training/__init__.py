"""Training a stage's adapter: `train` (DPO or ORPO with LoRA through TRL; merging an adapter),
`process` (training as its own process through `accelerate launch`), `memory` (the memory plan
of each job on a GPU)."""


class TrainingError(RuntimeError):
    """Training could not start (no pair fits, nothing trainable); the message says why."""
