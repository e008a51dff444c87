variable "region" {
  description = "AWS region of the bucket (and cluster)."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name of the deployment."
  type        = string
  default     = "ambrosia"
}

variable "bucket_name" {
  description = "Globally unique name of the log bucket."
  type        = string
}

variable "log_prefix" {
  description = "Key prefix of the logs."
  type        = string
  default     = "prod"
}

variable "create_eks" {
  description = "Also create an EKS cluster."
  type        = bool
  default     = false
}

variable "subnet_ids" {
  description = "Private subnets for EKS (when create_eks)."
  type        = list(string)
  default     = []
}

variable "eks_public_access_cidrs" {
  description = "Who may reach the EKS API from the internet (empty: private endpoint only)."
  type        = list(string)
  default     = []
}

variable "node_count" {
  description = "EKS nodes."
  type        = number
  default     = 2
}

variable "node_instance_type" {
  description = "EKS node instance type."
  type        = string
  default     = "m6i.large"
}
