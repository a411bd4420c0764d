"""The front ends: what a person or an operator runs, apart from the runtime every worker shares.

``cli`` (the ``singtome`` command) and ``cli_models`` parse arguments and call into the packages;
``local`` is the one-process cover (no broker) and ``batch`` its several-songs form; ``demo`` and
``demo_audio`` are ``singtome demo`` and the audio it generates; ``stack`` and ``kafka_broker`` run
the local broker and S3 server; ``doctor`` checks a machine. The runtime (``streams``) and the
schemas never import this package.
"""
