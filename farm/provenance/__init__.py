"""Provenance: what the farm says about each wheel it publishes, signed, and how anyone checks it.

The path of one wheel's provenance, one module per stage:

statement  the worker's attest step writes an in-toto Statement v1 (SLSA provenance v1 predicate)
           naming the wheel by digest, what it was built from and how, and its verification result;
           the worker stores its canonical JSON beside the wheel. Holds no key: workers import it.
keys       the farm's Ed25519 key pair on disk; the public half published with every index tree.
sign       the coordinator signs the statement's bytes: a DSSE envelope in a PEP 740-shaped
           document; and the check of such a document against a public key.
write      at publish, the unsigned statement and the signed document beside the wheel in the
           index, and the `provenance` row.
verify     `farm verify`: a wheel (or every served copy of a version) against its signed document,
           the farm's records and the upstream index.

Importing this package loads none of them; import the module you need.
"""
