# The ACL policy of the wrappers' token: read the catalog (services and node health), write nothing.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
