# Example root: storage and identity for ambrosia on Azure, optionally an AKS cluster.
#   terraform init && terraform apply -var storage_account_name=myambrosialogs \
#     -var 'allowed_ip_ranges=["203.0.113.7"]'
#   ambrosia config from-terraform . > ambrosia.toml    (see docs/deploy-azure.md)

provider "azurerm" {
  features {}
  # Containers, tables and shares are created with Entra ID, not account keys.
  storage_use_azuread = true
}

module "ambrosia" {
  source = "../modules/ambrosia"

  name                     = var.name
  location                 = var.location
  storage_account_name     = var.storage_account_name
  log_prefix               = var.log_prefix
  allowed_ip_ranges        = var.allowed_ip_ranges
  allowed_subnet_ids       = var.allowed_subnet_ids
  create_aks               = var.create_aks
  aks_authorized_ip_ranges = var.aks_authorized_ip_ranges
  node_count               = var.node_count
  tags                     = { application = "ambrosia", deployment = var.name }
}
