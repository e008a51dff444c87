# The names `ambrosia config from-terraform` reads: keep them as the module names them.

output "log_url" {
  description = "Log URL for ambrosia.toml."
  value       = module.ambrosia.log_url
}

output "catalog_url" {
  description = "Catalog URL for ambrosia.toml."
  value       = module.ambrosia.catalog_url
}

output "catalog_table" {
  description = "The catalog table."
  value       = module.ambrosia.catalog_table
}

output "region" {
  description = "AWS_REGION of the coordinators."
  value       = module.ambrosia.region
}

output "bucket" {
  description = "The log bucket."
  value       = module.ambrosia.bucket
}

output "role_arn" {
  description = "Role of the coordinators."
  value       = module.ambrosia.role_arn
}

output "kubernetes_namespace" {
  description = "Namespace bound to the role."
  value       = module.ambrosia.kubernetes_namespace
}

output "kubernetes_service_account" {
  description = "Service account bound to the role."
  value       = module.ambrosia.kubernetes_service_account
}

output "cluster_name" {
  description = "EKS cluster, when created."
  value       = module.ambrosia.cluster_name
}
