variable "name" {
  description = "Name of the deployment: prefixes every resource it creates."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name: 3 to 32 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "bucket_name" {
  description = "Name of the S3 bucket that holds the logs (globally unique)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name: 3 to 63 lowercase letters, digits, dots and hyphens (the rule ambrosia's s3 backend checks)."
  }
}

variable "log_prefix" {
  description = "Key prefix of the logs inside the bucket; each instance writes under PREFIX/INSTANCE/."
  type        = string
  default     = "ambrosia"
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/-]*[A-Za-z0-9]$", var.log_prefix)) && !strcontains(var.log_prefix, "//")
    error_message = "log_prefix: no leading or trailing slash, no empty segment."
  }
}

variable "noncurrent_version_days" {
  description = "Days a deleted or overwritten log object stays recoverable (versioning) before S3 removes it. Ambrosia deletes whole chunks itself once a newer checkpoint covers them; this rule only cleans up after those deletes."
  type        = number
  default     = 7
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "kubernetes_namespace" {
  description = "Namespace of the ambrosia pods (EKS Pod Identity binds the role to its service account)."
  type        = string
  default     = "ambrosia"
}

variable "kubernetes_service_account" {
  description = "Service account of the ambrosia pods."
  type        = string
  default     = "ambrosia"
}

variable "create_eks" {
  description = "Also create an EKS cluster with one managed node group and Pod Identity for ambrosia."
  type        = bool
  default     = false
}

variable "subnet_ids" {
  description = "Private subnets of the EKS cluster and its nodes (at least two zones); needed when create_eks."
  type        = list(string)
  default     = []
}

variable "eks_version" {
  description = "Kubernetes version of the EKS cluster."
  type        = string
  default     = "1.32"
}

variable "eks_public_access_cidrs" {
  description = "CIDRs allowed to reach the EKS API endpoint from the internet; empty keeps the endpoint private."
  type        = list(string)
  default     = []
}

variable "node_instance_type" {
  description = "Instance type of the EKS nodes."
  type        = string
  default     = "m6i.large"
}

variable "node_disk_gb" {
  description = "Root volume of each EKS node, GiB (the EKS default; ambrosia's data is on the pods' own volumes)."
  type        = number
  default     = 20
}

variable "node_count" {
  description = "Number of EKS nodes (one per immortal, plus spare room for a rescheduled pod)."
  type        = number
  default     = 2
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
