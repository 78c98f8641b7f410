"""aquarium-sweep library: dataset preparation, models, training, reports and orchestration."""
