"""`genforge review`: rate generated samples thumbs-up/down (issue 17; the web page is to come)."""
