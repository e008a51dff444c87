# Example root: an S3 bucket, a DynamoDB catalog table and a role for ambrosia,
# optionally an EKS cluster.
#   terraform init && terraform apply -var bucket_name=my-ambrosia-logs
#   ambrosia config from-terraform . > ambrosia.toml    (see docs/deploy-aws.md)

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      application = "ambrosia"
      deployment  = var.name
    }
  }
}

module "ambrosia" {
  source = "../modules/ambrosia"

  name                    = var.name
  bucket_name             = var.bucket_name
  log_prefix              = var.log_prefix
  create_eks              = var.create_eks
  subnet_ids              = var.subnet_ids
  eks_public_access_cidrs = var.eks_public_access_cidrs
  node_count              = var.node_count
  node_instance_type      = var.node_instance_type
}
