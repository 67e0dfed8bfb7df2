#!/bin/sh
# A plain CGI/1.1 program (the gateway's integration test and bench serve it
# through berth and through busybox httpd alike).
case "$PATH_INFO" in
  /sleep) sleep 60 ;;
  /crash) echo "crashing on purpose" >&2; exit 3 ;;
esac
if [ "$REQUEST_METHOD" = POST ]; then
  body=$(cat)
  printf 'Status: 201 Created\r\nContent-Type: text/plain\r\nLocation: /things/1\r\nX-Body-Length: %s\r\n\r\n' "$CONTENT_LENGTH"
  printf 'got %s' "$body"
  exit 0
fi
printf 'Content-Type: text/plain\nX-Script: app\n\n'
echo "method=$REQUEST_METHOD"
echo "path=$PATH_INFO"
echo "query=$QUERY_STRING"
echo "script=$SCRIPT_NAME"
echo "gateway=$GATEWAY_INTERFACE"
echo "custom=$HTTP_X_CUSTOM"
echo "auth=${HTTP_AUTHORIZATION:-none}"
