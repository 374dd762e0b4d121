"""Typed errors for bad hardware input; each message is one sentence naming the field and fix."""


class PlannerInputError(ValueError):
    """A user input (name, file, field) is wrong; the message says which and how to fix it."""


class UnknownNameError(PlannerInputError, KeyError):
    """A catalog name that does not exist; the message suggests the closest one."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])
