"""Host side (molecule faults): hold the venv store lock the way another lockstep run does
(flock plus its note: pid, host, since, doing) until killed."""

import fcntl
import json
import os
import socket
import sys
import time

fd = os.open(os.path.join(sys.argv[1], ".lockstep.lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "doing": "a maintenance job"}).encode())
time.sleep(float(sys.argv[2]))
