"""`aquarium finetune-variant`: fine-tune one MobileNetV3Large variant of a sweep (one pod's work)."""

from jobs.train_variant import variant_command

command = variant_command("finetune", "finetune-variant", "Fine-tune one pretrained MobileNetV3 (Large or Small) variant of a sweep.")

if __name__ == "__main__":
    command()
