"""The users service: users, their lifecycle stage and its history."""
