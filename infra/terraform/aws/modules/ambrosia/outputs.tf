# Output names are part of the interface: `ambrosia config from-terraform` reads them
# (ambrosia/terraform.py) and the docs quote them.

output "log_url" {
  description = "The log URL for ambrosia.toml (`log = ...`): every instance writes under it."
  value       = "s3://${aws_s3_bucket.logs.bucket}/${var.log_prefix}"
}

output "catalog_url" {
  description = "The catalog URL for ambrosia.toml (`catalog = ...`): the DynamoDB table every coordinator registers in and looks its peers up in."
  value       = "dynamodb://${aws_dynamodb_table.catalog.name}?region=${data.aws_region.current.name}"
}

output "catalog_table" {
  description = "The DynamoDB table of the catalog."
  value       = aws_dynamodb_table.catalog.name
}

output "region" {
  description = "The bucket's region (AWS_REGION of the coordinators)."
  value       = aws_s3_bucket.logs.region
}

output "bucket" {
  description = "The bucket holding the logs."
  value       = aws_s3_bucket.logs.bucket
}

output "role_arn" {
  description = "The IAM role the coordinators run as (bound to the service account by EKS Pod Identity)."
  value       = aws_iam_role.ambrosia.arn
}

output "kubernetes_namespace" {
  description = "Namespace of the service account the role is bound to."
  value       = var.kubernetes_namespace
}

output "kubernetes_service_account" {
  description = "Service account the role is bound to."
  value       = var.kubernetes_service_account
}

output "cluster_name" {
  description = "The EKS cluster, when create_eks (null otherwise)."
  value       = var.create_eks ? aws_eks_cluster.this[0].name : null
}
