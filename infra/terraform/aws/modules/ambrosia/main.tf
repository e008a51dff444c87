# Storage and permissions for ambrosia logs on S3 and its catalog in DynamoDB, and
# optionally an EKS cluster to run the coordinators on. See docs/deploy-aws.md.
#
# The role's policy allows exactly the calls ambrosia's s3 backend makes
# (ambrosia/backends/s3.py): GetObject (get and head), PutObject (conditional puts of
# pages, fences, lock, meta, checkpoints), DeleteObject (DeleteObjects of chunks a
# checkpoint covers) on PREFIX/*, and ListBucket (ListObjectsV2 and HeadBucket) limited
# to PREFIX. No CreateBucket: the bucket is made here, so run ambrosia without --create.
# On the catalog table, exactly the calls of ambrosia/catalog/dynamodb.py: GetItem,
# PutItem and DeleteItem (conditional on the row's revision) and Query (the listing).
# No CreateTable: the table is made here.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  object_arn = "${aws_s3_bucket.logs.arn}/${var.log_prefix}/*"
}

# -- encryption key -------------------------------------------------------------------------

# One key for the logs and the catalog table.
resource "aws_kms_key" "logs" {
  description             = "${var.name}: ambrosia logs in s3://${var.bucket_name}/${var.log_prefix} and its catalog table"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

data "aws_iam_policy_document" "key" {
  # The account administers the key through IAM; the ambrosia role gets its use of the
  # key from its own policy below.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" means this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.name}-ambrosia-logs"
  target_key_id = aws_kms_key.logs.key_id
}

# -- the bucket -----------------------------------------------------------------------------

# Server access logging needs a second bucket to receive the logs; accounts that audit S3
# do it account-wide (CloudTrail data events, an organisation's log bucket), so the module
# leaves it to them rather than create a log bucket per deployment.
#trivy:ignore:AVD-AWS-0089
resource "aws_s3_bucket" "logs" {
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.logs.arn
    }
    # One data key per bucket, not per object: appends are small objects.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

# Ambrosia decides which log objects are garbage (chunks before the oldest kept
# checkpoint) and deletes them itself. An expiration of current objects here would delete
# live log pages under a running coordinator, so the rule only removes what ambrosia
# already deleted (noncurrent versions, delete markers) and abandoned multipart uploads.
resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket     = aws_s3_bucket.logs.id
  depends_on = [aws_s3_bucket_versioning.logs]
  rule {
    id     = "clean-up-after-ambrosia-deletes"
    status = "Enabled"
    filter {
      prefix = "${var.log_prefix}/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    expiration {
      expired_object_delete_marker = true
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyPlainHttp"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.logs.arn,
      "${aws_s3_bucket.logs.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}

# -- the catalog ----------------------------------------------------------------------------

# The layout ambrosia/catalog/dynamodb.py reads and writes: partition key `kind` (always
# "instance"), sort key `name` (the instance name); the other attributes need no schema.
# A handful of small rows read when a coordinator dials a peer: on-demand billing.
resource "aws_dynamodb_table" "catalog" {
  name         = "${var.name}-ambrosia-catalog"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "kind"
  range_key    = "name"

  attribute {
    name = "kind"
    type = "S"
  }
  attribute {
    name = "name"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.logs.arn
  }
  tags = var.tags
}

# -- the role the coordinators run as ------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  # EKS Pod Identity: the agent on the node assumes the role for the bound service account.
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ambrosia" {
  name                 = "${var.name}-ambrosia"
  description          = "Ambrosia coordinators: read and write their logs under s3://${var.bucket_name}/${var.log_prefix}/ and their catalog table"
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "LogObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [local.object_arn]
  }
  statement {
    sid       = "ListLogPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.logs.arn]
    # HeadBucket (the probe at open) carries no prefix; every listing ambrosia makes
    # names one under PREFIX/.
    condition {
      test     = "StringLikeIfExists"
      variable = "s3:prefix"
      values   = ["${var.log_prefix}/*"]
    }
  }
  statement {
    sid       = "CatalogTable"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.catalog.arn]
  }
  statement {
    # S3 (SSE-KMS) and DynamoDB use the key on the role's behalf.
    sid       = "LogKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.logs.arn]
  }
}

resource "aws_iam_policy" "logs" {
  name        = "${var.name}-ambrosia-logs"
  description = "The S3 calls ambrosia's s3 log store makes, on its prefix only, and the DynamoDB calls of its catalog, on its table only."
  policy      = data.aws_iam_policy_document.logs.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "logs" {
  role       = aws_iam_role.ambrosia.name
  policy_arn = aws_iam_policy.logs.arn
}
