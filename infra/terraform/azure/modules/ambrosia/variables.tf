variable "name" {
  description = "Name of the deployment: prefixes the resources it creates."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name: 3 to 32 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "location" {
  description = "Azure region."
  type        = string
}

variable "storage_account_name" {
  description = "Name of the storage account (globally unique, 3 to 24 lowercase letters and digits)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name: 3 to 24 lowercase letters and digits."
  }
}

variable "log_container" {
  description = "Blob container of the logs (azblob://CONTAINER/PREFIX)."
  type        = string
  default     = "ambrosia-logs"
  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$", var.log_container))
    error_message = "log_container: 3 to 63 lowercase letters, digits and single hyphens."
  }
}

variable "log_prefix" {
  description = "Prefix of the logs inside the container; each instance writes under PREFIX/INSTANCE/."
  type        = string
  default     = "prod"
}

variable "catalog_table" {
  description = "Azure Table of the catalog (aztable://TABLE): 3 to 63 letters and digits, starting with a letter."
  type        = string
  default     = "ambrosia"
  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9]{2,62}$", var.catalog_table))
    error_message = "catalog_table: 3 to 63 letters and digits, starting with a letter (the rule ambrosia's catalog checks)."
  }
}

variable "file_share" {
  description = "Azure Files share for a file:// log on a mounted share (empty: no share)."
  type        = string
  default     = "ambrosia-logs"
}

variable "file_share_quota_gb" {
  description = "Quota of the file share in GiB."
  type        = number
  default     = 100
}

variable "allowed_ip_ranges" {
  description = "Public IP ranges allowed to reach the storage account (the machine running terraform, say). The account refuses every other network except allowed_subnet_ids."
  type        = list(string)
  default     = []
}

variable "allowed_subnet_ids" {
  description = "Subnets allowed to reach the storage account (the AKS node subnet)."
  type        = list(string)
  default     = []
}

variable "kubernetes_namespace" {
  description = "Namespace of the ambrosia pods (the workload identity's federated subject)."
  type        = string
  default     = "ambrosia"
}

variable "kubernetes_service_account" {
  description = "Service account of the ambrosia pods."
  type        = string
  default     = "ambrosia"
}

variable "create_aks" {
  description = "Also create an AKS cluster with workload identity for ambrosia."
  type        = bool
  default     = false
}

variable "aks_subnet_id" {
  description = "Subnet of the AKS nodes (null: AKS makes its own network)."
  type        = string
  default     = null
}

variable "aks_authorized_ip_ranges" {
  description = "IP ranges allowed to reach the AKS API server (needed when create_aks)."
  type        = list(string)
  default     = []
}

variable "node_vm_size" {
  description = "VM size of the AKS nodes."
  type        = string
  default     = "Standard_D2s_v5"
}

variable "node_count" {
  description = "AKS nodes (one per immortal, plus room for a rescheduled pod)."
  type        = number
  default     = 2
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
