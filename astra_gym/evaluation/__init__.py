"""World-model evaluation: frame metrics (PSNR, SSIM, delta-PSNR) and the inverse-dynamics model."""
