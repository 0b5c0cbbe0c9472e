"""Tools that read the topics as they are: ``pktstream tail`` and ``pktstream audit``."""
