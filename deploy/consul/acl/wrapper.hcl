# The ACL policy of the wrappers' token: read the catalog (services and node health), write nothing
# but the wrapper's own registration (wrapper/gateway.py: never routed to; wrapper.gateway_service).
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
service "openai-api-wrapper-gateway" {
  policy = "write"
}
