# A Consul server of a 3-server cluster (docs/deployment.md). tests/support/consul_cluster.py runs this file.
# What differs per machine comes on the command line (deploy/systemd/consul.service):
#   -node NAME -bind ADDRESS -data-dir DIR -retry-join SERVER ... (the other servers' addresses)
server           = true
bootstrap_expect = 3          # no leader until three servers joined; they tolerate the loss of one
client_addr      = "127.0.0.1"  # the HTTP API only for this machine's own processes (none, on a server machine)
retry_interval   = "5s"       # between two tries to join the other servers (Consul's default is 30 s)
leave_on_terminate = false    # a server that is restarted stays a raft peer: stopping it must not shrink the quorum
disable_update_check = true
log_level        = "INFO"

performance {
  raft_multiplier = 1         # Consul's production value: leader loss noticed and a new one elected in seconds
}

ports {
  dns  = -1                   # the gateway does not use Consul DNS
  grpc = -1                   # nor Connect's xDS
}
