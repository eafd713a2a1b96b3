"""What waking a blocked process costs on this machine: the floor under
every hop of a pipeline on one box.

Two processes pass one byte back and forth over a socketpair; each send
wakes the other from a blocking read. Half the round trip is one wake-up
plus two system calls, which every stage boundary pays at least once (the
receiving process is asleep while the others compute).

Usage: python3 scripts/wake_floor.py [--rounds 2000]
"""

import argparse
import os
import socket
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while b.recv(1):
            b.send(b"x")
        os._exit(0)
    b.close()
    trips = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        a.send(b"x")
        a.recv(1)
        trips.append(time.perf_counter() - t)
    a.close()
    os.waitpid(pid, 0)
    trips.sort()
    med = statistics.median(trips) * 1e6
    print(f"process ping-pong over a socketpair, {args.rounds} round trips:")
    print(f"  median {med:.1f} us, 10th percentile {trips[len(trips) // 10] * 1e6:.1f} us")
    print(f"  one wake-up (half the median): {med / 2:.1f} us")


if __name__ == "__main__":
    main()
