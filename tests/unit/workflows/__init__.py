"""The workflows service's rules, interpreter, stepper decisions and workers, in memory."""
