"""Load tests: the real app under many visitors, for long, or under a memory cap.

    python -m bench.load [--clients 40] [--seconds 30]    # visitors waiting for answers (crowd.py)
    python -m bench.load.soak                             # 20 users mixing every endpoint
    python -m bench.load.hostile_memory                   # hostile uploads under prlimit --as
    python -m bench.load.app_latency                      # start-up and query latency over HTTP

They start `python app.py` on 127.0.0.1 and check every answer against the in-process index; see
docs/reliability.md. hostile_memory and app_latency are also entries of the suite (`python -m bench`).
"""
