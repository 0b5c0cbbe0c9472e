"""The detectors of ``pktstream alerts``, one module each, found by ``registry``."""
