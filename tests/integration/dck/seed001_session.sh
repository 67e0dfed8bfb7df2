#!/usr/bin/env bash
# Seed 001's DCK shell functions, pasted unchanged, run against berthd.
# Runs inside a private network namespace (set up by dck_test.cc) where
# berthd listens on localhost:5000, as the seed's functions expect. The
# bearer token reaches curl through $HOME/.curlrc, so the functions stay as
# written. Prints what each call answered, one JSON document per line group;
# the test checks them.
set -euo pipefail
IMAGE_ID="$1"

# ---- from seed 001, unchanged ----
function dck-ls {
    if [[ -z $1 ]]; then
        curl http://localhost:5000/dck/api/v1.0/images
    else
        curl http://localhost:5000/dck/api/v1.0/image/$1
    fi
}

function dck-exec {
    contents="\"type\": \"$2\", \"name\": \"$3\", \"imageid\": \"$4\", \"userdata\": \"$5\""
    curl -H 'Content-Type: application/json' -X POST -d "{ $contents }" http://localhost:5000/dck/api/v1.0/proc/$1
}

function dck-ps {
    if [[ -z $1 ]]; then
        curl http://localhost:5000/dck/api/v1.0/procs
    else
        curl http://localhost:5000/dck/api/v1.0/proc/$1
    fi
}

function dck-ps-ppid {
    curl http://localhost:5000/dck/api/v1.0/proc/$1/children
}
# ---- end of seed 001 ----

set +u  # the seed's functions test "$1" without a default
echo "== ls";          dck-ls;                 echo
echo "== ls-image";    dck-ls "$IMAGE_ID";     echo
echo "== ps-empty";    dck-ps;                 echo
echo "== exec";        dck-exec 1 exec webserver01 "$IMAGE_ID" "#User-data for the initialization"; echo
echo "== fork1";       dck-exec 2 fork webserver02; echo
echo "== fork2";       dck-exec 2 fork webserver03; echo
echo "== ps";          dck-ps;                 echo
echo "== ps-2";        dck-ps 2;               echo
echo "== ps-ppid-2";   dck-ps-ppid 2;          echo
echo "== end"
