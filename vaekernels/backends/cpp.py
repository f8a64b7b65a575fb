"""The C++ CPU backend (the compiled extension ``vaekernels._C``)."""


def available():
    return "the C++ backend is not built yet"


def unsupported(x):
    return None
