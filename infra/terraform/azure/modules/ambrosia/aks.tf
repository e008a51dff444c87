# Optional AKS cluster (create_aks = true): Entra ID with Azure RBAC, the API server
# limited to aks_authorized_ip_ranges, network policy on, the OIDC issuer and workload
# identity on, and a federated credential for the ambrosia service account.

# Container insights need a Log Analytics workspace, which operators already run per
# subscription or organisation; wire it in with an oms_agent block pointing there. The
# cluster's metrics for ambrosia come from its own /metrics (infra/kubernetes).
#trivy:ignore:AVD-AZU-0040
resource "azurerm_kubernetes_cluster" "this" {
  count                             = var.create_aks ? 1 : 0
  name                              = var.name
  location                          = azurerm_resource_group.this.location
  resource_group_name               = azurerm_resource_group.this.name
  dns_prefix                        = var.name
  oidc_issuer_enabled               = true
  workload_identity_enabled         = true
  role_based_access_control_enabled = true
  local_account_disabled            = true
  azure_policy_enabled              = true
  tags                              = var.tags

  default_node_pool {
    name                         = "system"
    vm_size                      = var.node_vm_size
    node_count                   = var.node_count
    vnet_subnet_id               = var.aks_subnet_id
    only_critical_addons_enabled = false
    upgrade_settings {
      max_surge = "1"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  azure_active_directory_role_based_access_control {
    azure_rbac_enabled = true
  }

  api_server_access_profile {
    authorized_ip_ranges = var.aks_authorized_ip_ranges
  }

  network_profile {
    network_plugin = "azure"
    network_policy = "azure"
  }

  lifecycle {
    precondition {
      condition     = length(var.aks_authorized_ip_ranges) > 0
      error_message = "create_aks needs aks_authorized_ip_ranges: who may reach the API server."
    }
  }
}

resource "azurerm_federated_identity_credential" "ambrosia" {
  count               = var.create_aks ? 1 : 0
  name                = "${var.name}-ambrosia-pods"
  resource_group_name = azurerm_resource_group.this.name
  parent_id           = azurerm_user_assigned_identity.ambrosia.id
  issuer              = azurerm_kubernetes_cluster.this[0].oidc_issuer_url
  subject             = "system:serviceaccount:${var.kubernetes_namespace}:${var.kubernetes_service_account}"
  audience            = ["api://AzureADTokenExchange"]
}
