"""omnirag's development harness, outside every product package (no image installs it).

- :mod:`~omnirag_harness.processes`: the services, the LLM and Redis as processes, started the one
  way the tests, the benches and ``make run`` share, at the addresses their settings define;
- :mod:`~omnirag_harness.servers`: serve an app in a thread, Redis and the local llama.cpp LLM for a
  test's duration, read a metric, keep a test on loopback;
- :mod:`~omnirag_harness.http_server`: a threaded HTTP server for tests (a site of routes that
  records its requests, and the plumbing of the protocol servers below);
- :mod:`~omnirag_harness.gateway_stack`: pytest fixtures for the whole stack behind real gateways;
- :mod:`~omnirag_harness.scripted_llm`, :mod:`~omnirag_harness.recording_proxy`: an OpenAI-compatible
  upstream that replays scripted output, and a proxy that records what a service sent upstream;
- :mod:`~omnirag_harness.indexer`: the example knowledge bases indexed, the ingest worker in a thread
  or a process;
- :mod:`~omnirag_harness.hub`: a local stand-in for the Hugging Face Hub and ModelScope.
"""
