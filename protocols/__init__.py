"""The contract between coordinator and clients: schema, tensor codecs, hashing, signatures, TLS.

Imports nothing from the rest of Offsite; import the submodules directly (this package file stays
empty so that `protocols.hashing` can be used without pulling in Flower).
"""
