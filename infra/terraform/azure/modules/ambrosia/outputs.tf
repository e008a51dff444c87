# Output names are part of the interface: `ambrosia config from-terraform` reads them
# (ambrosia/terraform.py), the docs quote them and tests/infra checks them.

output "log_url" {
  description = "The log URL for ambrosia.toml (`log = ...`)."
  value       = "azblob://${azurerm_storage_container.logs.name}/${var.log_prefix}"
}

output "catalog_url" {
  description = "The catalog URL for ambrosia.toml (`catalog = ...`)."
  value       = "aztable://${azurerm_storage_table.catalog.name}"
}

output "blob_account_url" {
  description = "AZURE_STORAGE_ACCOUNT_URL of the coordinators."
  value       = azurerm_storage_account.this.primary_blob_endpoint
}

output "table_account_url" {
  description = "AZURE_TABLES_ACCOUNT_URL of the coordinators."
  value       = azurerm_storage_account.this.primary_table_endpoint
}

output "file_share_url" {
  description = "The share to mount for a file:// log (null without a share)."
  value       = var.file_share != "" ? "//${azurerm_storage_account.this.name}.file.core.windows.net/${var.file_share}" : null
}

output "client_id" {
  description = "AZURE_CLIENT_ID of the coordinators: the identity with the storage roles (the service account's azure.workload.identity/client-id annotation)."
  value       = azurerm_user_assigned_identity.ambrosia.client_id
}

output "storage_account_name" {
  description = "The storage account."
  value       = azurerm_storage_account.this.name
}

output "kubernetes_namespace" {
  description = "Namespace of the federated service account."
  value       = var.kubernetes_namespace
}

output "kubernetes_service_account" {
  description = "The federated service account."
  value       = var.kubernetes_service_account
}

output "cluster_name" {
  description = "The AKS cluster, when create_aks (null otherwise)."
  value       = var.create_aks ? azurerm_kubernetes_cluster.this[0].name : null
}
