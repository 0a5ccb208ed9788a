"""cosim: co-simulation of peer-to-peer energy trading on low-voltage networks."""


def _one_highs_thread() -> None:
    """Size HiGHS's thread scheduler to one thread, before any model is solved.

    HiGHS keeps one thread scheduler per process, sized by the first solve; a later solve
    that asks for another size fails at once ("the scheduler has already been initialized
    to use 2 threads", model status Not Set). cosim solves many small LPs, where one
    thread is fastest, and its models ask for one; a model that sets nothing takes what
    the scheduler has. So the first solve of every process is this empty one-thread one.
    """
    import ctypes
    import os
    import sys

    import highspy

    # HiGHS prints its banner once per process, on the C stdout: swallow it here, so that
    # `cosim clear` writes nothing but CSV on stdout
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.addVar(0.0, 1.0)
        h.run()
        ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


_one_highs_thread()
