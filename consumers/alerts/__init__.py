"""``pktstream alerts``: detections as OCSF Detection Findings; one module per detector in ``detectors``."""
