"""Building blocks of the RVC synthesizer (attention encoder, flows, HiFi-GAN/NSF decoders)."""
