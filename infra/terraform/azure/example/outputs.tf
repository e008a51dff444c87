# The names `ambrosia config from-terraform` reads: keep them as the module names them.

output "log_url" {
  description = "Log URL for ambrosia.toml."
  value       = module.ambrosia.log_url
}

output "catalog_url" {
  description = "Catalog URL for ambrosia.toml."
  value       = module.ambrosia.catalog_url
}

output "blob_account_url" {
  description = "AZURE_STORAGE_ACCOUNT_URL."
  value       = module.ambrosia.blob_account_url
}

output "table_account_url" {
  description = "AZURE_TABLES_ACCOUNT_URL."
  value       = module.ambrosia.table_account_url
}

output "file_share_url" {
  description = "The share to mount."
  value       = module.ambrosia.file_share_url
}

output "client_id" {
  description = "AZURE_CLIENT_ID of the coordinators."
  value       = module.ambrosia.client_id
}

output "storage_account_name" {
  description = "The storage account."
  value       = module.ambrosia.storage_account_name
}

output "kubernetes_namespace" {
  description = "Namespace of the federated service account."
  value       = module.ambrosia.kubernetes_namespace
}

output "kubernetes_service_account" {
  description = "The federated service account."
  value       = module.ambrosia.kubernetes_service_account
}

output "cluster_name" {
  description = "AKS cluster, when created."
  value       = module.ambrosia.cluster_name
}
