"""fetchrl: PPO on Gymnasium-Robotics Fetch tasks, with every number it prints checked."""

__version__ = "0.1.0"
