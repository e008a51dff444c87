# Storage and identity for ambrosia on Azure, and optionally an AKS cluster to run the
# coordinators on. See docs/deploy-azure.md.
#
# One storage account holds the three places ambrosia uses: a blob container for the
# logs (azblob://), a table for the catalog (aztable://) and a file share for a file://
# log on a mounted share. A user-assigned identity gets data-plane roles scoped to those
# three resources only, never to the account; with create_aks its federated credential
# lets the ambrosia service account sign in as it (workload identity), so no key or
# connection string ever reaches a pod.

resource "azurerm_resource_group" "this" {
  name     = "${var.name}-rg"
  location = var.location
  tags     = var.tags
}

resource "azurerm_storage_account" "this" {
  name                            = var.storage_account_name
  resource_group_name             = azurerm_resource_group.this.name
  location                        = azurerm_resource_group.this.location
  account_kind                    = "StorageV2"
  account_tier                    = "Standard"
  account_replication_type        = "ZRS"
  https_traffic_only_enabled      = true
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  public_network_access_enabled   = true
  # Shared keys stay on only for the file share: the Azure Files CSI driver mounts with
  # the account key. Without a share, only Entra ID (the identity below) gets in.
  shared_access_key_enabled       = var.file_share != ""
  default_to_oauth_authentication = true
  tags                            = var.tags

  network_rules {
    default_action             = "Deny"
    bypass                     = ["AzureServices"]
    ip_rules                   = var.allowed_ip_ranges
    virtual_network_subnet_ids = var.allowed_subnet_ids
  }

  blob_properties {
    # Ambrosia deletes the chunks a checkpoint covers; soft delete keeps them a week for
    # an operator who needs them back. No lifecycle rule deletes live blobs.
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  queue_properties {
    logging {
      delete                = true
      read                  = true
      write                 = true
      version               = "1.0"
      retention_policy_days = 30
    }
  }
}

resource "azurerm_storage_container" "logs" {
  name                  = var.log_container
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}

resource "azurerm_storage_table" "catalog" {
  name                 = var.catalog_table
  storage_account_name = azurerm_storage_account.this.name
}

resource "azurerm_storage_share" "logs" {
  count              = var.file_share != "" ? 1 : 0
  name               = var.file_share
  storage_account_id = azurerm_storage_account.this.id
  quota              = var.file_share_quota_gb
  enabled_protocol   = "SMB"
}

# -- the identity the coordinators run as --------------------------------------------------

resource "azurerm_user_assigned_identity" "ambrosia" {
  name                = "${var.name}-ambrosia"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = var.tags
}

locals {
  # Role scopes: the one container, table and share, not the account.
  container_scope = "${azurerm_storage_account.this.id}/blobServices/default/containers/${azurerm_storage_container.logs.name}"
  table_scope     = "${azurerm_storage_account.this.id}/tableServices/default/tables/${azurerm_storage_table.catalog.name}"
  share_scope     = "${azurerm_storage_account.this.id}/fileServices/default/fileshares/${var.file_share}"
}

# Blob leases, append blobs, conditional writes and deletes of the log's blobs.
resource "azurerm_role_assignment" "logs" {
  scope                = local.container_scope
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.ambrosia.principal_id
}

# Register, read and list catalog records.
resource "azurerm_role_assignment" "catalog" {
  scope                = local.table_scope
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = azurerm_user_assigned_identity.ambrosia.principal_id
}

# Read and write files on the share (identity-based SMB access).
resource "azurerm_role_assignment" "share" {
  count                = var.file_share != "" ? 1 : 0
  scope                = local.share_scope
  role_definition_name = "Storage File Data SMB Share Contributor"
  principal_id         = azurerm_user_assigned_identity.ambrosia.principal_id
}
