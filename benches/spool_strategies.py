# Issue 14's first question, measured: which commit strategy can make queue mode fast on this
# disk? N messages of 5 KB from 50 writer threads, each message durable (data, and the
# directory entry or the segment) before it counts. Group commit: one directory fsync (or one
# segment fdatasync) serves every writer waiting at that moment.
#   two_files        today's spool: body + envelope, two fdatasyncs, two renames
#   one_file         envelope inside the message file: one fdatasync, one rename
#   one_file_direct  the same, written in place (a torn record told by its length/CRC)
#   segment          one append-only file, records appended, group-committed fdatasync
# Not measured here: delivery marks and reclaiming segments, which a segment log also needs.
# Run: python3 benches/spool_strategies.py [N]   (SPOOLEXP_DIR: where to write; default /tmp)
import os, sys, time, threading, json, tempfile, shutil
N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
W = 50
BODY = b"x" * 5000
ENV = json.dumps({"id": "0" * 30, "mail_from": "a@b.c", "rcpt_to": ["d@e.f"], "size": 5000}).encode()

class Group:
    """One fsync of `fd_fn()` shared by all callers waiting while one is in progress."""
    def __init__(self, sync):
        self.sync = sync; self.lock = threading.Lock(); self.cv = threading.Condition(self.lock)
        self.gen_done = 0; self.gen_next = 1; self.running = False
    def wait(self):
        with self.lock:
            target = self.gen_next
            while self.gen_done < target:
                if not self.running:
                    self.running = True; gen = self.gen_next; self.gen_next += 1
                    self.lock.release()
                    try: self.sync()
                    finally: self.lock.acquire()
                    self.running = False; self.gen_done = gen; self.cv.notify_all()
                else:
                    self.cv.wait()

def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)

def two_files(root, i, g):
    inc, q = root + "/incoming", root + "/queue"
    b, j = f"{inc}/{i}.tmp", f"{inc}/{i}.json.tmp"
    with open(b, "wb") as f: f.write(BODY); f.flush(); os.fdatasync(f.fileno())
    with open(j, "wb") as f: f.write(ENV); f.flush(); os.fdatasync(f.fileno())
    os.rename(b, f"{q}/{i}.eml"); os.rename(j, f"{q}/{i}.json"); g.wait()

def one_file(root, i, g):
    inc, q = root + "/incoming", root + "/queue"
    b = f"{inc}/{i}.tmp"
    with open(b, "wb") as f: f.write(len(ENV).to_bytes(4, "big") + ENV + BODY); f.flush(); os.fdatasync(f.fileno())
    os.rename(b, f"{q}/{i}.msg"); g.wait()

def one_file_direct(root, i, g):
    # Written in place (a CRC/length trailer tells a torn record); no rename.
    q = root + "/queue"
    with open(f"{q}/{i}.msg", "wb") as f: f.write(len(ENV).to_bytes(4, "big") + ENV + BODY); f.flush(); os.fdatasync(f.fileno())
    g.wait()

seg_lock = threading.Lock()
def segment(root, i, g):
    rec = len(ENV).to_bytes(4, "big") + ENV + BODY
    with seg_lock: os.write(SEG, rec)
    g.wait()

def run(name, fn, mkgroup):
    root = tempfile.mkdtemp(dir=os.environ.get("SPOOLEXP_DIR", "/tmp"))
    os.makedirs(root + "/incoming"); os.makedirs(root + "/queue")
    global SEG
    if name == "segment":
        SEG = os.open(root + "/queue/seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        g = Group(lambda: os.fdatasync(SEG))
    else:
        g = Group(lambda: fsync_dir(root + "/queue"))
    ids = iter(range(N)); lk = threading.Lock()
    def worker():
        while True:
            with lk:
                i = next(ids, None)
            if i is None: return
            fn(root, i, g)
    t0 = time.time(); c0 = os.times()
    ts = [threading.Thread(target=worker) for _ in range(W)]
    [t.start() for t in ts]; [t.join() for t in ts]
    dt = time.time() - t0; c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    sysc = c1.system - c0.system
    shutil.rmtree(root)
    return N / dt, sysc / N * 1000

for rnd in range(2):
    for name, fn in [("two_files", two_files), ("one_file", one_file), ("one_file_direct", one_file_direct), ("segment", segment)]:
        rate, sys_ms = run(name, fn, None)
        print(f"round {rnd+1} {name:16s} {rate:8.0f} msg/s  system CPU {sys_ms:.3f} s per 1000", flush=True)
