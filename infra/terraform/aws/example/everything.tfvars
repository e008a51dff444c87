# Every optional part on: the security scan (tests/infra) checks these too.
bucket_name = "ambrosia-scan-logs"
create_eks  = true
subnet_ids  = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
