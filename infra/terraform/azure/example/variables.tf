variable "name" {
  description = "Name of the deployment."
  type        = string
  default     = "ambrosia"
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "storage_account_name" {
  description = "Globally unique storage account name."
  type        = string
}

variable "log_prefix" {
  description = "Prefix of the logs in the container."
  type        = string
  default     = "prod"
}

variable "allowed_ip_ranges" {
  description = "Public IPs allowed to reach the storage account (include the machine running terraform)."
  type        = list(string)
  default     = []
}

variable "allowed_subnet_ids" {
  description = "Subnets allowed to reach the storage account."
  type        = list(string)
  default     = []
}

variable "create_aks" {
  description = "Also create an AKS cluster."
  type        = bool
  default     = false
}

variable "aks_authorized_ip_ranges" {
  description = "Who may reach the AKS API server."
  type        = list(string)
  default     = []
}

variable "node_count" {
  description = "AKS nodes."
  type        = number
  default     = 2
}
