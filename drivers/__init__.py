"""Device drivers: the only code that talks to hardware libraries."""
