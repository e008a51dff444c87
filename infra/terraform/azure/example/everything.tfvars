# Every optional part on: the security scan (tests/infra) checks these too.
storage_account_name     = "ambrosiascan"
allowed_ip_ranges        = ["203.0.113.7"]
create_aks               = true
aks_authorized_ip_ranges = ["203.0.113.0/24"]
