# SHA-256 of each precompiled NIF artifact, by file name. Written by
# `mix property_table.nif.package`; the NIF compiler downloads the artifact of its
# target from the configured base URL when it is listed here, and builds from source
# otherwise.
%{}
