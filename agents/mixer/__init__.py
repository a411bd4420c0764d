"""The mixer stage: converted vocals + accompaniment (+ backing vocals) -> an encoded cover.

``stage.mix_track`` is the plain function; ``agent.handle`` adapts it to ``vocals.converted`` ->
``track.ready``; ``mix``, ``effects``, ``loudness`` and ``encode`` are its parts; ``report`` draws
a job's vocals and mix for a person to check.
"""
